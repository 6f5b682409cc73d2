"""The whole chain: ``pploy up`` (gate + pploy in one process), the shipped nginx
configuration, the stream-test endpoints and ``pploy doctor``, which finds the hop that
buffers a stream."""
