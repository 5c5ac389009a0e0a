import pytest
import torch

from diffuse.image_metrics import psnr, ssim


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3))
    noisy = [ssim(x, (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1))
             for s in (0.05, 0.2, 0.8)]
    assert (noisy[0] > noisy[1]).all() and (noisy[1] > noisy[2]).all()
    assert torch.allclose(ssim(x, x.flip(0)), ssim(x.flip(0), x))  # symmetric


def test_ssim_of_flat_images_is_the_luminance_term():
    # no variance anywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), in [0, 1] units
    a, b = torch.full((1, 3, 8, 8), 0.2 * 2 - 1), torch.full((1, 3, 8, 8), 0.6 * 2 - 1)
    c1 = 0.01**2
    assert float(ssim(a, b)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-5)


def test_ssim_refuses_mismatched_batches():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


def test_psnr_reads_the_unit_range():
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(psnr(x + 0.2, x), torch.full((2,), 20.0))
