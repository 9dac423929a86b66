// A controller for the launcher tests: launches three hanging ranks of the worker given as the
// first argument and reports how the launch ended.

import { launch } from "../../../../core/dist/launcher.ts";

try {
  await launch({
    entry: ["run", "-A", "--no-lock", Deno.args[0], "hang"],
    nprocPerNode: 3,
    timeoutSeconds: 60,
    graceSeconds: 0.5,
  });
} catch (error) {
  console.error(String(error));
  Deno.exit(1);
}
