"""Drivers that run :class:`nonstop.core.FeedCore` over real sockets (coming next)."""
