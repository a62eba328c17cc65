"""backfill --shard I/N: a stable partition of the inputs, N runs covering a library exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from img2pose_client.backfill import parse_args, run
from img2pose_client.inputs import Shard, shard_of
from img2pose_tools.torchserve_launcher import REPO
from tests.support.photo_library import lines
from tests.support.served_models import DEMO_MODEL

SHARDS = 3


def test_shard_parsing_and_its_usage_errors():
    assert Shard.parse("2/5") == Shard(2, 5) and Shard.parse(" 0 / 1 ") == Shard(0, 1)
    for bad in ["5/5", "-1/4", "1/0", "1", "a/b", "1/2/3", ""]:
        with pytest.raises(ValueError):
            Shard.parse(bad)
        with pytest.raises(SystemExit):
            parse_args(["x.jpg", "--url", "http://h:1", "--output", "o.jsonl", "--shard", bad])


def test_every_path_is_in_exactly_one_shard_and_shards_are_balanced():
    paths = [f"/photos/{year}/{n:05d}.jpg" for year in range(2000, 2010) for n in range(400)]
    for count in (1, 2, 7):
        owners = [[index for index in range(count) if Shard(index, count).owns(path)] for path in paths]
        assert all(len(found) == 1 for found in owners)
        sizes = Counter(found[0] for found in owners)
        assert min(sizes.values()) > 0.8 * len(paths) / count  # 4000 paths: a hash, not a bias


def test_the_shard_of_a_path_is_the_same_in_every_process():
    """Not Python's salted hash(): other interpreters with other hash seeds agree."""
    paths = ["/photos/a.jpg", "/photos/été/b.png", "/photos/\udcff-undecodable.jpg"]
    here = [shard_of(path, 7) for path in paths]
    code = ("import json, sys; from img2pose_client.inputs import shard_of; "
            "print(json.dumps([shard_of(p, 7) for p in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO / "handler")}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(paths, ensure_ascii=False)], env=env,
                             capture_output=True, text=True, check=True, errors="surrogateescape").stdout
        assert json.loads(out) == here


@pytest.mark.server
def test_n_sharded_runs_partition_a_folder_and_equal_direct_calls(torchserve_server, library, direct, tmp_path):
    """The backfill tests' library (4 good images, 3 bad files, nested) in 3 shards."""
    root = library["good"][0].parent
    everything_there = [*library["good"], *library["bad"]]
    summaries, outputs = [], []
    for index in range(SHARDS):
        output = tmp_path / f"shard-{index}-of-{SHARDS}.jsonl"
        argv = [str(root), "--url", torchserve_server.inference_url, "--model", DEMO_MODEL, "--output", str(output),
                "--token-file", str(torchserve_server.workdir / "key_file.json"), "--shard", f"{index}/{SHARDS}",
                "--concurrency", "4", "--quiet"]
        summaries.append(run(parse_args(argv), progress=False))
        outputs.append(output)

    recorded = [[line["path"] for line in lines(output)] for output in outputs]
    assert Counter(path for shard in recorded for path in shard) == Counter(map(str, everything_there))
    for index, paths in enumerate(recorded):
        assert all(shard_of(path, SHARDS) == index for path in paths)
        assert summaries[index]["processed"] == len(paths)
        assert summaries[index]["other_shards"] == len(everything_there) - len(paths)
    for output in outputs:
        for line in lines(output):
            if line["path"] in direct:
                assert line == {"path": line["path"], "faces": direct[line["path"]]}
            else:
                assert line["status"] == 400 and set(line) == {"path", "error", "status"}

    # each shard resumes from its own file: a re-run of a shard sends nothing
    busiest = max(range(SHARDS), key=lambda index: len(recorded[index]))
    again = run(parse_args([str(root), "--url", torchserve_server.inference_url, "--model", DEMO_MODEL,
                            "--output", str(outputs[busiest]), "--token-file",
                            str(torchserve_server.workdir / "key_file.json"), "--shard", f"{busiest}/{SHARDS}",
                            "--quiet"]),
                progress=False)
    assert (again["processed"], again["skipped"]) == (0, len(recorded[busiest]))
