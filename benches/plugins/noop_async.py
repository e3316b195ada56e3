"""Every hook defined, each an `async def` that does nothing and never awaits: what a plugin
costs when it only looks (benches/compare-plugins.toml, benches/ab.sh)."""


async def on_connect(conn):
    return None


async def on_helo(conn, name):
    return None


async def on_auth(conn, user):
    return None


async def on_mail(tx, sender):
    return None


async def on_rcpt(tx, address):
    return None


async def on_data(tx, headers):
    return None


async def on_message(tx, msg):
    return None


async def route(address, msg):
    return None


async def on_delivered(event):
    return None


async def on_deferred(event):
    return None


async def on_bounced(event):
    return None
