"""Watermarks in the initial noise: keys (Tree-Ring, Gaussian Shading), watermarked sampling,
detection by DDIM inversion, and the attacks a detector is measured under.

    keys.py       the keys, their JSON form, embed(noise) and test(noise) -> statistic, p-value
    detection.py  sample_watermarked(pipeline, key, n), detect(pipeline, images, key)
    attacks.py    jpeg, crop, blur, noise, rotation, brightness over [0, 1] pictures
"""

from .attacks import ATTACKS, attack, parse_attack
from .detection import calibrated_threshold, detect, invert_images, sample_watermarked, watermarked_noise
from .keys import (GaussianShadingKey, Key, TreeRingKey, binomial_upper_tail, key_from_dict, load_key, max_radius,
                   noncentral_chi2_cdf, save_key)

__all__ = ["ATTACKS", "GaussianShadingKey", "Key", "TreeRingKey", "attack", "binomial_upper_tail",
           "calibrated_threshold", "detect",
           "invert_images", "key_from_dict", "load_key", "max_radius", "noncentral_chi2_cdf", "parse_attack",
           "sample_watermarked", "save_key", "watermarked_noise"]
