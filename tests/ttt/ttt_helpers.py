"""Constants of the TTT tests (a unique module name: pytest puts several test folders on sys.path)."""

LJ = {"name": "lj", "params": {"sigma": 2.1, "epsilon": 0.4, "rc": 4.5}}
ARCH = {"channels": 8, "num_bessel": 6, "radial_mlp": [16]}
