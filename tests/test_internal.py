"""The plant's internal views answer only the plant: an RDB and a CEP worker, real processes
on a real broker, refuse every request without the plant's secret, Faust's own pages included (not
Prometheus's /metrics)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from procs import Cep, Worker, wait_until

from ingest.eod import open_first_day
from tickplant import internal


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_rdb_and_cep_views_refuse_calls_without_the_plants_secret(settings, catalog, tmp_path):
    open_first_day(settings, catalog)
    worker = Worker(settings, "rdb-i1", tmp_path).start()
    cep = Cep(settings, "cep-i1", tmp_path).start()
    try:
        worker.wait_serving()
        wait_until(lambda: cep.status() is not None, 60, "the CEP serving", cep.log_tail)
        mine = internal.headers(settings)
        wrong = {internal.HEADER: "not-the-secret"}
        for base, paths in ((worker.url, ["/rdb/v1/status", "/rdb/v1/trade/rows", "/rdb/v1/trade/last",
                                          "/rdb/v1/trade/count", "/", "/router/", "/table/", "/stats/"]),
                            (cep.url, ["/cep/v1/status", "/cep/v1/analytics", "/cep/v1/bars", "/"])):
            for path in paths:
                assert status_of(base + path) == 401, path
                assert status_of(base + path, wrong) == 401, path
        assert status_of(worker.url + "/rdb/v1/trade/rows", mine) == 200
        assert status_of(worker.url + "/rdb/v1/status", mine) == 200
        assert status_of(cep.url + "/cep/v1/analytics", mine) == 200
        # Prometheus's scrape is the one open view: figures, no rows (tickplant/metrics.py)
        assert status_of(worker.url + "/metrics") == status_of(cep.url + "/metrics") == 200
        assert status_of(worker.url + "/metrics/trade") == 401
    finally:
        cep.stop()
        worker.stop()


def test_the_secret_is_one_per_data_directory_unless_set(settings, tmp_path):
    a = internal.secret(settings.replace(data_dir=tmp_path / "host-a"))
    assert a == internal.secret(settings.replace(data_dir=tmp_path / "host-a"))
    assert a != internal.secret(settings.replace(data_dir=tmp_path / "host-b"))
    assert (tmp_path / "host-a" / internal.FILE).stat().st_mode & 0o077 == 0
    assert internal.secret(settings.replace(internal_secret="shared-by-every-host")) == "shared-by-every-host"


@pytest.mark.parametrize("sent, ok", [(None, False), ("", False), ("x", False), ("s3cret", True)])
def test_the_secret_is_compared_exactly(sent, ok):
    assert internal.is_internal(sent, "s3cret") is ok
