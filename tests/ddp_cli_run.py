"""Driver for test_distributed.py (not a test itself): `diffusion-lm <args...>` in this process, or in each
process under torchrun; argv[1] is the step whose lr request raises KeyboardInterrupt (a simulated kill, as
Ctrl-C or a scheduler's signal stops a run) or '-' for none."""
import sys

from diffusion_lm import training
from diffusion_lm.cli.main import run

if __name__ == "__main__":
    kill_at, args = sys.argv[1], sys.argv[2:]
    if kill_at != "-":
        real, stop = training.lr_at, int(kill_at)

        def killed(step, *a, **kw):
            if step == stop:
                raise KeyboardInterrupt
            return real(step, *a, **kw)

        training.lr_at = killed
    sys.exit(run(args))
