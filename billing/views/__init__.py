"""How the service shows its objects: the API's request and response shapes, and the
snapshots the event log keeps (the same shapes, so an event shows what the API shows).
Shared by the API and the workers; it holds no routes."""
