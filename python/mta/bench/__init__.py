"""`mta bench`: a load generator, a sink and a side-by-side comparison for any SMTP server.

Speed first: both ends run several processes, each with its own uvloop loop and raw
asyncio Protocols over pre-built byte buffers, so the tool is never what is measured.
"""
