"""A loopback TCP proxy with the shape of a real storage account seen from a VM: every request
waits `delay` more (a delay line on the client-to-server direction, so a request's bytes reach
the server `delay` later; a new connection's setup waits `delay` too), and every connection is
capped at `rate` bytes per second in each direction (paced writes). No HTTP parsing: any client
and server (Azurite, rclone, azcopy, amlfs) can be put behind it by pointing the account URL at
its port.

It runs in a child process (`NetProxy`), so its CPU is measured apart from the client's and never
shares the client's GIL. Bounded: it listens on 127.0.0.1 only, every connection ends when
either side closes, and the child exits when the parent says stop or dies.

    with NetProxy(upstream_port, delay=0.020, rate=60e6) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

#: bytes read at a time: large, so that pacing 60 MB/s costs few wake-ups
READ = 256 << 10
#: pieces in flight per direction (4 MiB: above 60 MB/s x 20 ms)
QUEUE = 16


class _Pacer:
    """Paces one direction of one connection to `rate` bytes/s (None: no cap)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.next = 0.0

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.next = max(self.next, now) + n / self.rate
        # send now, then wait for the time the bytes take on the wire (bursts of one read)
        wait = self.next - n / self.rate - now
        if wait > 0:
            await asyncio.sleep(wait)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rate: float | None,
    delay: float,
) -> None:
    """Copy `reader` to `writer`: each piece released `delay` after it arrived, paced to `rate`."""
    pacer = _Pacer(rate)
    # bounded: a full queue stops the reads, so the sender feels the cap (TCP back-pressure)
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE)

    async def read() -> None:
        try:
            while data := await reader.read(READ):
                await queue.put((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((0.0, b""))

    task = asyncio.ensure_future(read())
    try:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await pacer.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(upstream: int, delay: float, rate: float | None, conn) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)  # the connection's setup round trip
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(_pump(cr, sw, rate, delay), _pump(sr, cw, rate, 0.0))
        except asyncio.CancelledError:
            pass  # the proxy is stopping: an idle keep-alive connection ends quietly
        finally:
            for w in (cw, sw):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=READ, backlog=512)
    port = server.sockets[0].getsockname()[1]
    conn.send(port)
    loop = asyncio.get_running_loop()
    # Stop when told (or when the parent dies: the pipe reads EOF).
    await loop.run_in_executor(None, _wait_stop, conn)
    server.close()


def _wait_stop(conn) -> None:
    try:
        conn.recv()
    except (EOFError, OSError):
        pass


def _child(upstream: int, delay: float, rate: float | None, conn) -> None:
    asyncio.run(_serve(upstream, delay, rate, conn))


class NetProxy:
    """The proxy in a child process; inside `with`, `port` is where it listens and `pid` its
    process (for its CPU seconds)."""

    def __init__(self, upstream_port: int, delay: float = 0.020, rate: float | None = 60e6):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child, args=(upstream_port, delay, rate, child), daemon=True
        )
        self.port = 0
        self.pid = 0

    def __enter__(self) -> NetProxy:
        self._proc.start()
        if not self._conn.poll(60):
            self._proc.kill()
            raise RuntimeError("the network proxy did not start")
        self.port = self._conn.recv()
        self.pid = self._proc.pid or 0
        return self

    def cpu_seconds(self) -> float:
        return proc_cpu(self.pid)

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
