// Whether GPU tests can run here: a CUDA driver and at least one GPU. Tests pass `ignore: !gpu`
// and the reason is printed once, so a CPU machine says why they were skipped.

import { probeDevices } from "../../ffi/cuda.ts";

const probe = probeDevices();
export const gpu = probe.count > 0;
if (!gpu) console.log(`GPU tests skipped: ${probe.reason}`);
