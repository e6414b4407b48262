"""arbridge service runtime: the shared composition pieces every service uses."""
