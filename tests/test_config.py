"""MountConfig: one validated configuration, one size parser, clamps said in one line, and the
JSON the background daemon receives."""

from __future__ import annotations

import pytest

from amlfs.errors import UsageError
from amlfs.fs.config import MIN_BLOCKS_CACHED, MountConfig
from amlfs.fs.inodes import ENTRY_BYTES, Timeouts
from amlfs.units import FOREVER, GiB, KiB, MiB, human, parse_size


def test_defaults_and_what_the_daemon_parts_are_given():
    config, notes = MountConfig.from_options()
    assert notes == []
    assert config.block_size == 8 * MiB and config.cache_bytes == 1 * GiB
    assert config.read_timeout == 60 and config.timeouts == Timeouts()
    dp, ops = config.datapath(), config.operations()
    assert dp.block_size == 8 * MiB and dp.cache_bytes == 1 * GiB and dp.read_timeout == 60
    assert ops.request_timeout == 60 and ops.small_file_size == 8 * MiB
    # Cached listings hold at most a quarter of the budget.
    assert config.max_listing_entries * ENTRY_BYTES <= config.cache_bytes // 4
    assert ops.max_listing_entries == config.max_listing_entries


def test_a_cache_smaller_than_a_few_blocks_gets_smaller_blocks_with_a_note():
    config, notes = MountConfig.from_options(cache_size="4M")
    assert config.block_size == 1 * MiB  # 4 blocks fit
    assert config.block_size * MIN_BLOCKS_CACHED <= config.cache_bytes
    assert notes == [
        "--cache-size 4MiB holds fewer than 4 blocks of the default block size 8MiB:"
        " using 1MiB blocks"
    ]
    config, notes = MountConfig.from_options(cache_size="64M", block_size="32M")
    assert config.block_size == 16 * MiB and "--block-size 32MiB" in notes[0]


def test_nonsense_is_refused_in_one_line_naming_the_option():
    for kwargs, words in [
        ({"cache_size": "lots"}, "bad --cache-size 'lots'"),
        ({"cache_size": "512K"}, "bad --cache-size '512K': must be between 1MiB"),
        ({"block_size": "1"}, "bad --block-size '1'"),
        ({"read_timeout": "0"}, "bad --read-timeout"),
        ({"read_timeout": "forever"}, "bad --read-timeout 'forever'"),
        ({"attr_timeout": "-1"}, "bad --attr-timeout"),
        ({"read_ahead": "2G"}, "bad --read-ahead"),
    ]:
        with pytest.raises(UsageError) as e:
            MountConfig.from_options(**kwargs)
        assert words in str(e.value) and "\n" not in str(e.value), kwargs


def test_immutable_and_forever_mean_cache_everything():
    for kwargs in ({"immutable": True}, {"attr_timeout": "forever"}):
        config, _ = MountConfig.from_options(**kwargs)
        assert config.timeouts.is_immutable and config.timeouts.attr == FOREVER


def test_the_background_daemon_gets_exactly_the_validated_config():
    config, _ = MountConfig.from_options(
        cache_size="4M",
        attr_timeout="7.5",
        negative_timeout="1",
        read_timeout="3",
        fuse_options=("allow_other", "noatime"),
        nonempty=True,
        debug=True,
        log_file="/tmp/x.log",
    )
    again = MountConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(UsageError):
        MountConfig.from_json('{"block_size": 1}')


def test_one_size_parser():
    assert parse_size("8M", "x") == parse_size("8MiB", "x") == 8 * MiB
    assert parse_size("65536", "x") == 64 * KiB and parse_size("1g", "x") == GiB
    assert human(8 * MiB) == "8MiB" and human(1536 * KiB) == "1536KiB" and human(100) == "100B"
