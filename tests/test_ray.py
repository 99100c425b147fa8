"""The Ray engine on a local two-CPU cluster: the same bits as the local engine, and a
killed worker's run retried.

Runs 2 presets x 1 seed: ``report --seeds`` is not on this branch yet.
"""

from __future__ import annotations

import numpy as np
import pytest

from twinnet.parallel import DIE_ONCE_VARIABLE
from twinnet.presets import load_presets
from twinnet.report import generate_report

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'twinnet[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs. Its workers inherit DIE_ONCE_VARIABLE, set before
    they start, pointing at a marker that exists (disarmed); a test removes it to arm it."""
    marker = tmp_path_factory.mktemp("ray") / "died"
    marker.touch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DIE_ONCE_VARIABLE, str(marker))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield marker
        finally:
            ray.shutdown()


def weights(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "weights.npz") as f:
        return {key: f[key] for key in f.files if key != "meta"}


def test_ray_report_has_the_local_reports_weights(cluster, tmp_path, mnist_path, presets_file):
    on_ray = generate_report(out=tmp_path / "ray", jobs=2, data_dir=mnist_path,
                             presets_path=presets_file, engine="ray").parent
    local = generate_report(out=tmp_path / "local", jobs=2, data_dir=mnist_path,
                            presets_path=presets_file).parent
    for preset in load_presets(presets_file):
        a, b = weights(preset.run_dir(on_ray)), weights(preset.run_dir(local))
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), (preset.label, key)


def test_a_killed_ray_worker_is_retried(cluster, tmp_path, mnist_path, presets_file, capfd):
    cluster.unlink()  # armed: the next job to start kills its worker
    out = generate_report(out=tmp_path / "report", jobs=2, data_dir=mnist_path,
                          presets_path=presets_file, engine="ray").parent
    err = capfd.readouterr().err
    assert cluster.exists(), "no worker was killed"
    assert "twinnet: a worker died while running P" in err and "running it again" in err
    assert "Traceback" not in err
    for preset in load_presets(presets_file):
        assert (preset.run_dir(out) / "metrics.json").is_file()
