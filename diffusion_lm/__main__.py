from diffusion_lm.cli.main import main

main()
