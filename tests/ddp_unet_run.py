"""Driver for test_distributed.py (not a test itself): train the tiny UNet of test_image_unet on fixed tiny
parts, in one process or under torchrun, into argv[1]; argv[2] (optional) is the step whose lr request
raises KeyboardInterrupt, a simulated kill."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from diffusion_lm import distributed, training  # noqa: E402
from diffusion_lm.image.train import train_unet  # noqa: E402
from test_image_unet import captioned_scenes, tiny_autoencoder, tiny_clip, unet_train_setup  # noqa: E402

if __name__ == "__main__":
    distributed.setup()
    torch.manual_seed(0)
    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(40)
    cfg, diffusion, train = unet_train_setup(Path(sys.argv[1]), steps=12, batch_size=8, checkpoint_every=4,
                                             ema_decay=0.9, log_every=2)
    if len(sys.argv) > 2:
        real, kill_at = training.lr_at, int(sys.argv[2])

        def killed(step, *a, **kw):
            if step == kill_at:
                raise KeyboardInterrupt
            return real(step, *a, **kw)

        training.lr_at = killed
    train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
