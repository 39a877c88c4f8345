"""Round store: manifest schema, image shards, versioned rounds and quarantine. Imports no model code."""
