"""Every hook an `async def` that awaits once (asyncio.sleep(0): a real suspension, as a hook
that asks a database would make) and returns None: the cost of hooks that wait."""

import asyncio


async def on_connect(conn):
    await asyncio.sleep(0)


async def on_helo(conn, name):
    await asyncio.sleep(0)


async def on_mail(tx, sender):
    await asyncio.sleep(0)


async def on_rcpt(tx, address):
    await asyncio.sleep(0)


async def on_data(tx, headers):
    await asyncio.sleep(0)


async def on_message(tx, msg):
    await asyncio.sleep(0)


async def route(address, msg):
    await asyncio.sleep(0)


async def on_delivered(event):
    await asyncio.sleep(0)


async def on_deferred(event):
    await asyncio.sleep(0)


async def on_bounced(event):
    await asyncio.sleep(0)
