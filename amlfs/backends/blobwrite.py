"""The write side of a Blob container for writable mounts: uploads as Put Block (Content-MD5 on
each) and a conditional Put Block List; folder markers; rename as server-side copy then delete.

Concurrency contract: as the BlobBackend it wraps (thread-safe); one Upload is driven as
base.Upload says (stages in parallel, commits alone).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobBlock, ContentSettings

from .azure import quoted_etag, timestamp
from .base import ObjectInfo, Upload, Writer, file_path_checked
from .blob import BlobBackend
from .blobupload import MAX_BLOCKS
from .errors import AlreadyExists, BackendError, Changed, NotEmpty, NotFound

log = logging.getLogger(__name__)

#: block ids are this long (all ids of one blob must be of one length)
ID_LEN = 40
#: kept content that is not made of blocks is staged in pieces of this size
RESTAGE_PIECE = 8 * 1024 * 1024
#: a server-side copy (rename) is polled this long at most
COPY_WAIT = 300.0


class BlobUpload(Upload):
    def __init__(self, writer: BlobWriter, rel: str, etag: str | None, keep: ObjectInfo | None):
        self.w = writer
        self.path = rel
        self.etag = etag
        self.keep = keep
        self._bc = writer.backend._cc.get_blob_client(rel)
        self._id_len = ID_LEN
        self._prefix = uuid.uuid4().hex
        self._kept: list[str] | None = None  # ids of the kept content, once known
        self._ids: dict[int, str] = {}

    def _id(self, tag: str) -> str:
        return (self._prefix + "0" * self._id_len)[: self._id_len - len(tag)] + tag

    def stage(self, index: int, offset: int, data: bytes | memoryview) -> None:
        block_id = self._id(f"p{index:09d}")
        body = bytes(data)
        # validate_content: the SDK sends the block's Content-MD5 and the service checks it.
        self.w.call(
            self.path,
            lambda: self._bc.stage_block(block_id, body, length=len(body), validate_content=True),
        )
        self._ids[index] = block_id

    def _kept_ids(self) -> list[str]:
        """The blocks of the kept content: its own committed blocks when it is made of them
        (ids of a length ours can share), else its bytes staged again as new blocks."""
        if self._kept is not None:
            return self._kept
        keep = self.keep
        if keep is None or keep.size == 0:
            self._kept = []
            return self._kept
        try:
            committed, _ = self._bc.get_block_list("committed")
        except Exception as e:
            raise self.w.backend._map_error(e, self.path) from None
        ids = [b.id for b in committed]
        lengths = {len(i) for i in ids}
        if ids and sum(b.size for b in committed) == keep.size and len(lengths) == 1:
            n = lengths.pop()
            # Parts staged before this was learnt have ids of our length: keep to it then.
            if 16 <= n <= 64 and (not self._ids or n == self._id_len):
                self._id_len = n
                self._kept = ids
                return ids
        kept = []
        for j, off in enumerate(range(0, keep.size, RESTAGE_PIECE)):
            n = min(RESTAGE_PIECE, keep.size - off)
            data = self.w.backend.read_range(self.path, off, n, etag=keep.etag)
            if len(data) != n:
                raise Changed(f"{self.path!r} changed while it was appended to", self.path)
            block_id = self._id(f"k{j:09d}")
            self.w.call(
                self.path,
                lambda b=block_id, d=data: self._bc.stage_block(
                    b, d, length=len(d), validate_content=True
                ),
            )
            kept.append(block_id)
        self._kept = kept
        return kept

    def prepare(self) -> None:
        """Learn how the kept content is made before any part is staged (append)."""
        if self.keep is not None and self.keep.size:
            self._kept_ids()

    def _conditions(self) -> dict[str, Any]:
        if self.etag is None:
            return {"match_condition": MatchConditions.IfMissing}
        return {"etag": self.etag, "match_condition": MatchConditions.IfNotModified}

    def _done(self, resp: dict[str, Any], size: int, md5: bytes | None) -> ObjectInfo:
        self.etag = quoted_etag(resp.get("etag"))
        return ObjectInfo(
            path=self.path,
            is_dir=False,
            size=size,
            etag=self.etag,
            mtime=timestamp(resp.get("last_modified")) or time.time(),
            content_md5=md5,
        )

    def put(self, data: bytes, md5: bytes) -> ObjectInfo:
        """One Put Blob with its Content-MD5 (the service checks it), conditional."""
        if self._kept or (self.keep is not None and self.keep.size) or self._ids:
            return super().put(data, md5)
        cond = self._conditions()
        try:
            resp = self.w.call(
                self.path,
                lambda: self._bc.upload_blob(
                    data,
                    length=len(data),
                    overwrite=self.etag is not None,
                    content_settings=ContentSettings(content_md5=bytearray(md5)),
                    max_concurrency=1,
                    **({} if self.etag is None else cond),
                ),
            )
        except AlreadyExists:
            raise Changed(
                f"{self.path!r} was created by someone else meanwhile", self.path
            ) from None
        except Changed:
            raise Changed(
                f"{self.path!r} changed remotely since it was opened", self.path
            ) from None
        info = self._done(resp, len(data), md5)
        # A later commit (more writes after this fsync) must restage this blob as blocks.
        self.keep = info
        self._kept = None
        return info

    def commit(self, parts: list[int], size: int, md5: bytes | None = None) -> ObjectInfo:
        ids = self._kept_ids() + [self._ids[i] for i in parts]
        if len(ids) > MAX_BLOCKS:
            raise BackendError(
                f"{self.path!r}: more than {MAX_BLOCKS} blocks (too many small fsyncs)", self.path
            )
        cond = self._conditions()
        settings = ContentSettings(content_md5=bytearray(md5)) if md5 else ContentSettings()
        try:
            resp = self.w.call(
                self.path,
                lambda: self._bc.commit_block_list(
                    [BlobBlock(i) for i in ids], content_settings=settings, **cond
                ),
            )
        except AlreadyExists:
            raise Changed(
                f"{self.path!r} was created by someone else meanwhile", self.path
            ) from None
        except Changed:
            raise Changed(
                f"{self.path!r} changed remotely since it was opened", self.path
            ) from None
        info = self._done(resp, size, md5)
        # Later commits keep what this one committed: the kept blocks are all of them now.
        self._kept = ids
        self._ids = {}
        self.keep = info
        return info


class BlobWriter(Writer):
    renames_directories = False

    def __init__(self, backend: BlobBackend):
        self.backend = backend

    def call(self, rel: str, fn: Any) -> Any:
        return self.backend._call(rel, fn)

    def open_upload(
        self, path: str, *, etag: str | None, keep: ObjectInfo | None = None
    ) -> BlobUpload:
        return BlobUpload(self, file_path_checked(path), etag, keep)

    def mkdir(self, path: str) -> ObjectInfo:
        rel = file_path_checked(path)
        bc = self.backend._cc.get_blob_client(rel)
        if self.backend._call(rel, lambda: self.backend._has_children(rel)):
            raise AlreadyExists(f"{rel!r} exists", rel)
        resp = self.call(
            rel,
            lambda: bc.upload_blob(
                b"", metadata={"hdi_isfolder": "true"}, overwrite=False, max_concurrency=1
            ),
        )
        return ObjectInfo(rel, True, mtime=timestamp(resp.get("last_modified")) or time.time())

    def rmdir(self, path: str) -> None:
        rel = file_path_checked(path)
        if self.call(rel, lambda: self.backend._has_children(rel)):
            raise NotEmpty(f"directory not empty: {rel!r}", rel)
        props = self.call(rel, lambda: self.backend._head(rel))
        if props is None:
            raise NotFound(f"no such directory: {rel!r}", rel)
        bc = self.backend._cc.get_blob_client(rel)
        self.call(
            rel,
            lambda: bc.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified),
        )

    def unlink(self, path: str) -> None:
        self.backend.delete(path)

    def rename(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        """A server-side copy, committed before the source is deleted (not atomic: for a moment
        both names hold the file; a failure leaves the source in place)."""
        s, d = file_path_checked(src.path), file_path_checked(dst)
        cc = self.backend._cc
        sbc, dbc = cc.get_blob_client(s), cc.get_blob_client(d)
        cond: dict[str, Any] = {}
        if src.etag:
            cond = {
                "source_etag": src.etag,
                "source_match_condition": MatchConditions.IfNotModified,
            }
        self.call(s, lambda: dbc.start_copy_from_url(sbc.url, requires_sync=None, **cond))
        deadline = time.monotonic() + COPY_WAIT
        delay = 0.05
        while True:
            props = self.call(d, dbc.get_blob_properties)
            status = props.copy.status if props.copy else "success"
            if status == "success":
                break
            if status != "pending" or time.monotonic() > deadline:
                raise BackendError(f"copying {s!r} to {d!r} failed ({status})", s)
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        if src.size != props.size:
            raise Changed(f"{s!r} changed while it was renamed", s)
        kw: dict[str, Any] = {}
        if src.etag:
            kw = {"etag": src.etag, "match_condition": MatchConditions.IfNotModified}
        try:
            self.call(s, lambda: sbc.delete_blob(**kw))
        except NotFound:
            pass
        md5 = props.content_settings.content_md5 if props.content_settings else None
        return ObjectInfo(
            d,
            False,
            props.size,
            quoted_etag(props.etag),
            timestamp(props.last_modified),
            bytes(md5) if md5 else None,
        )
