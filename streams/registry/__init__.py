"""Who may do what: institutions and agreements, their live view, apply, ACLs, Strimzi, schemas."""
