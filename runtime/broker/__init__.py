"""RabbitMQ: connection, topology, the control bus and the sync RPC path."""
