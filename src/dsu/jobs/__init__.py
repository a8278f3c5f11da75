"""The jobs the worker and the CLI run, one module per worker command, from validated request fields
to the fields of their answer: `separate`, `restore` (the `apollo` command), `denoise`, `ensemble`,
`download` (`download_model`), `clean`, and `models` (finding and loading the model a request names,
`load_model`). `outputs` lays out their files; `failures` words what goes wrong in any of them as a
coded error; `_pipeline` holds what they share. Each job checks its input and output paths once, at
its door, and hands the checked paths down.

Both front ends call these with the same dicts (`dsu.protocol` validates them), so a job behaves
the same whether it came as a JSON line or as command-line arguments."""
