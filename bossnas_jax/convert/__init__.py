"""Official PyTorch checkpoints <-> Flax variables: key tables (`keys.py`), array layouts
(`layouts.py`), the conversion with its report (`state_dicts.py`) and the command line (`cli.py`,
`python -m bossnas_jax.convert`)."""
