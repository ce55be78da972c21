"""fsspec's own abstract test suite (copy, get, put, open, pipe) run against amlfs.remotefs on
an Azurite blob datastore. Blob has no empty directories: `supports_empty_directories` is
False, so the suite checks the flat-namespace behaviour (a directory exists while a file lies
in it).

The glob edge cases (32 parameter sets per class, each building a 13-file tree) would take
minutes against Azurite: by default Get runs every fourth set (remote glob expansion, the part
that is ours), and Copy and Put (the same remote expansion; a local one) run them only with
AMLFS_FSSPEC_FULL=1, which runs all 137 tests."""

from __future__ import annotations

import os
import posixpath

import fsspec.tests.abstract as abstract
import pytest
from fsspec.tests.abstract.common import GLOB_EDGE_CASES_TESTS

from amlfs.remotefs import AzureMLFileSystem

from .test_fsspec import write_registry

pytestmark = pytest.mark.azurite


class AmlfsFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, tmp_path, blob_config):
        registry = write_registry(tmp_path / "datastores.yaml", blob_config)
        fs = AzureMLFileSystem(registry=registry, skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_path(self):
        return "azblob/base"  # the names ls and find return are the stripped form

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self):
        return False


FULL = os.environ.get("AMLFS_FSSPEC_FULL") == "1"
EDGE_NAMES = GLOB_EDGE_CASES_TESTS["argnames"]
EDGE_ALL = GLOB_EDGE_CASES_TESTS["argvalues"]
EDGE_SOME = EDGE_ALL if FULL else EDGE_ALL[::4]
only_full = pytest.mark.skipif(
    not FULL, reason="the glob edge cases run in Get; all: AMLFS_FSSPEC_FULL=1"
)


class TestAmlfsCopy(abstract.AbstractCopyTests, AmlfsFixtures):
    @only_full
    @pytest.mark.parametrize(EDGE_NAMES, EDGE_ALL)
    def test_copy_glob_edge_cases(
        self,
        path,
        recursive,
        maxdepth,
        expected,
        fs,
        fs_join,
        fs_glob_edge_cases_files,
        fs_target,
        fs_sanitize_path,
    ):
        super().test_copy_glob_edge_cases(
            path,
            recursive,
            maxdepth,
            expected,
            fs,
            fs_join,
            fs_glob_edge_cases_files,
            fs_target,
            fs_sanitize_path,
        )


class TestAmlfsGet(abstract.AbstractGetTests, AmlfsFixtures):
    @pytest.mark.parametrize(EDGE_NAMES, EDGE_SOME)
    def test_get_glob_edge_cases(
        self,
        path,
        recursive,
        maxdepth,
        expected,
        fs,
        fs_join,
        fs_glob_edge_cases_files,
        local_fs,
        local_join,
        local_target,
    ):
        super().test_get_glob_edge_cases(
            path,
            recursive,
            maxdepth,
            expected,
            fs,
            fs_join,
            fs_glob_edge_cases_files,
            local_fs,
            local_join,
            local_target,
        )


class TestAmlfsPut(abstract.AbstractPutTests, AmlfsFixtures):
    @only_full
    @pytest.mark.parametrize(EDGE_NAMES, EDGE_ALL)
    def test_put_glob_edge_cases(
        self,
        path,
        recursive,
        maxdepth,
        expected,
        fs,
        fs_join,
        fs_target,
        local_glob_edge_cases_files,
        local_join,
        fs_sanitize_path,
    ):
        super().test_put_glob_edge_cases(
            path,
            recursive,
            maxdepth,
            expected,
            fs,
            fs_join,
            fs_target,
            local_glob_edge_cases_files,
            local_join,
            fs_sanitize_path,
        )


class TestAmlfsOpen(abstract.AbstractOpenTests, AmlfsFixtures):
    pass


class TestAmlfsPipe(abstract.AbstractPipeTests, AmlfsFixtures):
    pass
