"""Sample-quality metrics, one file per measure (formulas in ``shared/docs/math.md``):

* ``fid``: FID = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}) and its bootstrap spread over samples;
* ``inception_score``: IS = exp(E_x KL(p(y | x) || p(y))), mean ± std over 10 splits;
* ``reference``: cached real-data statistics per (data set, split, feature network) and the FID floors at the
  samples' count N (real against real);
* ``memorisation``: the share of samples that are near-copies of a training image (pixel-space nearest
  neighbour closer than what 99 % of held-out test images achieve);
* ``fidelity_diversity``: fidelity and diversity apart: k-NN precision/recall (Kynkäänniemi et al. 2019),
  density/coverage (Naeem et al. 2020), computed over blocks of distances, and KID (Bińkowski et al. 2018);
* ``sliced_wasserstein``: SW_p between point sets, for 2-D data;
* ``guided_density``: the exact guided target p̃_w(x | c) of the Gaussian-mixture testbed, normalised;
* ``adherence``: a composition's adherence per term, the mean p(c_i | x) of each term's class and its standard error;
* ``scorers``: what ``cfgdiff eval`` measures per guidance weight, for images and for 2-D points.

Which network gives the features decides what FID and IS mean: with the digits classifier they are "FID
(digits-classifier features)" and "IS (digits classifier)", not comparable with Inception-v3 numbers.
This package imports neither training nor the CLI.
"""

from cfgdiff.evaluation.metrics.adherence import term_key, term_probabilities
from cfgdiff.evaluation.metrics.fid import (
    DEFAULT_BOOTSTRAP,
    FeatureStats,
    FrechetReference,
    bootstrap_fid,
    class_averaged_fid,
    feature_statistics,
    fid_with_spread,
    frechet_distance,
    paired_bootstrap_difference,
    union_statistics,
)
from cfgdiff.evaluation.metrics.fidelity_diversity import (
    DENSITY_K,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    PRDC,
    PRDC_K,
    kid,
    kth_neighbour_radii,
    polynomial_mmd2_unbiased,
    prdc,
    real_subset,
)
from cfgdiff.evaluation.metrics.guided_density import GuidedDensity, mean_log_density
from cfgdiff.evaluation.metrics.inception_score import inception_score
from cfgdiff.evaluation.metrics.memorisation import (
    NEAR_COPY_QUANTILE,
    NearCopyDetector,
    near_copy_detector,
    near_copy_threshold,
    nearest_neighbour_distances,
)
from cfgdiff.evaluation.metrics.reference import (
    FLOOR_DRAWS,
    POOL_SIZE,
    FeatureAccumulator,
    FeatureSet,
    Floor,
    ReferenceStats,
    data_key,
    default_cache_dir,
    extract_features,
    fid_floor,
    matched_floor,
    pool_rows,
    reference_statistics,
)
from cfgdiff.evaluation.metrics.scorers import (
    ImageScorer,
    SampleScorer,
    ScoreSet,
    VectorScorer,
    metric_names,
    row_fields,
)
from cfgdiff.evaluation.metrics.sliced_wasserstein import random_directions, sliced_wasserstein, wasserstein_1d_power

__all__ = [
    "DENSITY_K", "KID_SUBSETS", "KID_SUBSET_SIZE", "PRDC", "PRDC_K", "class_averaged_fid", "kid",
    "kth_neighbour_radii", "polynomial_mmd2_unbiased", "prdc", "real_subset",
    "DEFAULT_BOOTSTRAP", "FLOOR_DRAWS", "NEAR_COPY_QUANTILE", "POOL_SIZE", "FeatureAccumulator", "FeatureSet",
    "FeatureStats", "Floor", "FrechetReference", "GuidedDensity", "ImageScorer", "NearCopyDetector",
    "ReferenceStats", "SampleScorer", "ScoreSet", "VectorScorer", "bootstrap_fid", "data_key", "default_cache_dir",
    "extract_features", "feature_statistics", "fid_floor", "fid_with_spread", "frechet_distance", "inception_score",
    "matched_floor", "mean_log_density", "metric_names", "near_copy_detector", "near_copy_threshold",
    "nearest_neighbour_distances", "paired_bootstrap_difference", "random_directions", "reference_statistics",
    "pool_rows", "row_fields", "sliced_wasserstein", "term_key", "term_probabilities", "union_statistics",
    "wasserstein_1d_power",
]
