// The pipeline layer's one error class. Its message names the place in the pipeline file
// (`pipeline.yaml:12:5: compile.dtype: expected one of f32|f16|bf16, got "f8"`), and one error
// may carry several problems, so that a file is reported whole instead of one fix at a time.

/** A place in a pipeline file; line and column count from 1. */
export interface SourceLocation {
  file: string;
  line: number;
  column: number;
}

/** One problem, where it is known. */
export interface PipelineIssue {
  message: string;
  at?: SourceLocation;
}

export interface PipelineErrorOptions extends ErrorOptions {
  /** Several problems at once; the first is the one `message` and `at` describe. */
  issues?: readonly PipelineIssue[];
}

export class PipelineError extends Error {
  override name = "PipelineError";
  /** Every problem found; the message has one line per issue. */
  readonly issues: readonly PipelineIssue[];
  /** Where the first problem is, if known. */
  readonly file?: string;
  readonly line?: number;
  readonly column?: number;

  constructor(message: string, at?: SourceLocation, options?: PipelineErrorOptions) {
    const issues = options?.issues ?? [{ message, at }];
    super(issues.map(formatIssue).join("\n"), options);
    this.issues = issues;
    this.file = at?.file;
    this.line = at?.line;
    this.column = at?.column;
  }

  /** One error for several problems, in the order given. */
  static of(issues: readonly PipelineIssue[]): PipelineError {
    if (issues.length === 0) throw new RangeError("PipelineError.of needs at least one issue");
    return new PipelineError(issues[0].message, issues[0].at, { issues: [...issues] });
  }
}

/** `file:line:col: message`, or the message alone where the place is unknown. */
export function formatIssue(issue: PipelineIssue): string {
  const { at } = issue;
  return at ? `${at.file}:${at.line}:${at.column}: ${issue.message}` : issue.message;
}
