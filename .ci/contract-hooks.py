"""Schemathesis hooks for .ci/contract: how to put a generated PDF on the wire."""

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/pdf", "application/xml")
def pdf(ctx, value):
    # Sent as they are: a PDF starts with `%PDF-`, an XML document is any bytes (the server
    # stores them), not an element wrapping the generated value.
    return serialize_binary(value)
