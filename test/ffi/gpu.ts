// Whether GPU tests can run here: a CUDA driver and at least one GPU. Tests pass `ignore: !gpu`
// and the reason is printed once, so a CPU machine says why they were skipped.

import { probeDevices } from "../../ffi/cuda.ts";

const probe = probeDevices();
export const gpu = probe.count > 0;
/** How many GPUs this machine has; tests over several GPUs print their own reason when too few. */
export const gpus = probe.count;
if (!gpu) console.log(`GPU tests skipped: ${probe.reason}`);
