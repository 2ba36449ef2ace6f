"""Comparison reports: reading run folders (`runs.py`), aggregating over seeds (`aggregate.py`), the
figures (`plots.py`), HTML / markdown / CSV / JSON output (`render.py`), and `credo compare` /
`credo report` (`compare.py`)."""
