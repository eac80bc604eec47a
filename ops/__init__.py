"""Operating a ccq server: the `ccq` commands that read the server's settings and start
or manage its processes (see ``ops.commands``)."""
