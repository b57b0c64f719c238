"""TaskService: durable one-call tasks, leased and recovered like sagas."""
