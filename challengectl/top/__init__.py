"""`challengectl top` (docs/cli.md#commands): one live screen of a running service. `sources` reads the
service, PostgreSQL and Redis through the CLI's existing data layers, `view` turns two consecutive
readings into rates and percentiles, `screen` draws them with rich, `keys` reads single key presses."""
