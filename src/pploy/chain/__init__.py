"""The whole chain: ``pploy up`` (gate + pploy in one process), the shipped nginx
configuration and ``pploy doctor``, which reads the stream-test endpoints
(:mod:`pploy.streamtest`) to find the hop that buffers a stream."""
