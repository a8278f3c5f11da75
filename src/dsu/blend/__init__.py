"""Ensembles: several models (or stem files) blended into one set of stems, streamed.

`algorithms` holds the blending rules, `stft` the streamed spectral transform, `blender` the
per-stem blend, `job` the command itself, `cli` the `dsu ensemble` subcommand."""
