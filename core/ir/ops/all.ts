// Loads every built-in op into the registry.
import "./elementwise.ts";
import "./linear.ts";
import "./norm.ts";
import "./attention.ts";
import "./shape.ts";
import "./collective.ts";
