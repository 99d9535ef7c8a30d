"""Seeing a job: what one listing says about it and how that is drawn.

* :mod:`.snapshot`: one look at the dataset (one listing and the store's clock), each shard's displayed
  state, the ids in each state;
* :mod:`.follow`: what a watcher remembers across looks (rate and ETA over a sliding window, how long each
  running attempt has been seen running, the first line of each failed shard's error, read once);
* :mod:`.frame`: the live view's text (a grid of shards that fits any terminal) and its one-line form;
* :mod:`.document`: the job as one JSON document (``status --json``: every shard's document, read with
  bounded parallelism), which the HTML report is drawn from;
* :mod:`.charts` and :mod:`.html`: the self-contained HTML report (inline CSS, JS and SVG).
"""
