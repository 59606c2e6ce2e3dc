/** Errors that callers branch on. The CLI's top-level handler picks exit codes and hints by type. */

/** Bad user input: a value broke a rule. Exit code 2. */
export class ValidationError extends Error {
  constructor(
    readonly field: string,
    readonly rule: string,
    message: string,
  ) {
    super(message);
    this.name = 'ValidationError';
  }
}

/** Something named does not exist (cluster, pod, kind). Exit code 1. */
export class NotFoundError extends Error {
  constructor(
    readonly what: string,
    message: string,
  ) {
    super(message);
    this.name = 'NotFoundError';
  }
}

/** An operation ran and failed (a command, a wait, a store call). Exit code 1. */
export class OperationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'OperationError';
  }
}

/** The machine cannot do this: missing privilege, tool or kernel feature. Exit code 1. */
export class EnvironmentError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'EnvironmentError';
  }
}

/** Wrap an error with short lowercase context, keeping the cause and its type's meaning. */
export function wrap(context: string, err: unknown): Error {
  const msg = err instanceof Error ? err.message : String(err);
  if (err instanceof ValidationError) return new ValidationError(err.field, err.rule, `${context}: ${msg}`);
  if (err instanceof NotFoundError) return new NotFoundError(err.what, `${context}: ${msg}`);
  return new OperationError(`${context}: ${msg}`, { cause: err });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
