"""Every hook defined, each a plain function that does nothing (returns None): what a plugin
costs when it only looks (benches/compare-plugins.toml, benches/ab.sh)."""


def on_connect(conn):
    return None


def on_helo(conn, name):
    return None


def on_auth(conn, user):
    return None


def on_mail(tx, sender):
    return None


def on_rcpt(tx, address):
    return None


def on_data(tx, headers):
    return None


def on_message(tx, msg):
    return None


def route(address, msg):
    return None


def on_delivered(event):
    return None


def on_deferred(event):
    return None


def on_bounced(event):
    return None
