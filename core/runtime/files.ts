// Asking whether a path is a file or a folder, where a missing path is an answer, not an error.

function stat(path: string | URL): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

export function isFile(path: string | URL): boolean {
  return stat(path)?.isFile ?? false;
}

export function isDirectory(path: string | URL): boolean {
  return stat(path)?.isDirectory ?? false;
}
