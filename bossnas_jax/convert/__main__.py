"""python -m bossnas_jax.convert: see cli.py."""

import sys

from bossnas_jax.convert import cli

sys.exit(cli.main())
