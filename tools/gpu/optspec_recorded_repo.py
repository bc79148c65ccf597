"""asv plugin: the repository as one recorded commit, for a tree that travels without ``.git``.

The device machine receives a copy of the working tree, not the repository, and may have no
``git``; ``asv run --set-commit-hash`` still needs the commit's hash and date to file the
results. ``run.sh --dry-run`` records them (``git rev-parse HEAD``, author time) in
``.whl/source.json``, which travels with the wheels; this repository type answers from that
file (``$OPTSPEC_ASV_SOURCE``) and refuses every other repository operation (asv's own
``NoRepository`` behaviour), so nothing but ``--python=same --set-commit-hash`` can use it.

Loaded through the ``plugins`` entry of the asv configuration that ``gpu_run.py`` writes
(``".optspec_recorded_repo"``: asv imports it from the working directory); asv 0.6.6.
"""

from __future__ import annotations

import json
import os

from asv.repo import NoRepository, NoSuchNameError


class RecordedCommit(NoRepository):
    """One commit: its hash answers every name asv asks for (the branch, HEAD, a hash prefix)."""

    dvcs = "optspec-recorded"

    def __init__(self, url=None, path=None):
        super().__init__(url, path)
        with open(os.environ["OPTSPEC_ASV_SOURCE"], encoding="utf-8") as handle:
            source = json.load(handle)
        self._hash = str(source["commit"])
        self._date_ms = int(source["commit_time"]) * 1000  # asv's git plugin: author time, ms

    def get_hash_from_name(self, name):
        if name is None or name in ("main", "master", "HEAD") or (len(name) >= 7 and self._hash.startswith(name)):
            return self._hash
        raise NoSuchNameError(name)

    def get_date(self, hash):
        if hash != self._hash:
            self._raise_error()
        return self._date_ms

    def get_date_from_name(self, name):
        return self.get_date(self.get_hash_from_name(name))

    def get_decorated_hash(self, commit, hash_length=8):
        return commit[:hash_length]
