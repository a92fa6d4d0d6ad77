"""The bacpypes3 (PyPI) client's best strategies on metersync's simulated meters.

Called by `examples/bench_bacnet.rs` when BACPYPES3_PYTHON names a Python with
bacpypes3 installed: argv[1] is a JSON list of [address, instance], argv[2]
the number of measured runs. Reads each device's six points (analog-input
1-5 and accumulator 1, present-value only, as the issue's peer did) up to 32
devices at once, by ReadPropertyMultiple and by ReadProperty per point, and
prints one JSON line: {"rpm_ms": [...], "rp_ms": [...], "failed": n}.
"""

import asyncio
import json
import sys
import time

from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.pdu import Address

OBJECTS = [f"analog-input,{i}" for i in range(1, 6)] + ["accumulator,1"]


async def main() -> None:
    devices = json.loads(sys.argv[1])
    runs = int(sys.argv[2])
    args = SimpleArgumentParser().parse_args(["--address", "127.0.0.1:0", "--instance", "3999999"])
    app = Application.from_args(args)
    limit = asyncio.Semaphore(32)
    failed = 0

    async def rpm(address: str) -> None:
        nonlocal failed
        async with limit:
            try:
                # A flat list: object, [properties], object, [properties], ...
                params = []
                for o in OBJECTS:
                    params += [o, ["present-value"]]
                await app.read_property_multiple(Address(address), params)
            except Exception as e:  # counted, and the first one shown
                if not failed:
                    print(f"bacpypes3: {e!r}", file=sys.stderr)
                failed += 1

    async def rp(address: str) -> None:
        nonlocal failed
        async with limit:
            for o in OBJECTS:
                try:
                    await app.read_property(Address(address), o, "present-value")
                except Exception:
                    failed += 1

    out = {}
    for name, strategy in (("rpm_ms", rpm), ("rp_ms", rp)):
        await asyncio.gather(*(strategy(a) for a, _ in devices))  # warm-up
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await asyncio.gather(*(strategy(a) for a, _ in devices))
            times.append((time.perf_counter() - started) * 1000.0)
        out[name] = times
    out["failed"] = failed
    print(json.dumps(out), flush=True)
    app.close()


asyncio.run(main())
