// Loads every TensorRT converter into the registry.
import "./elementwise.ts";
import "./linear.ts";
import "./shape.ts";
import "./attention.ts";
import "./collective.ts";

export { checkNode, ConversionScope, converterFor, convertibleOps, type ConvertTarget } from "./registry.ts";
