"""`mta bench`: a load generator, a sink and a side-by-side comparison for any SMTP server.
Both ends run several processes, each a uvloop loop of raw Protocols over pre-built byte
buffers, so the tool is never what is measured."""
