/**
 * `postcopy <verb>`: the command-line entry. Each verb lives in its own
 * module under src/cli/ and is loaded only when used.
 */

export interface Verb {
  /** One line for `postcopy --help`. */
  summary: string;
  /** Runs the verb; resolves to the process exit code. */
  run(args: string[]): Promise<number>;
}

/** Verb name → lazy loader. Add a verb here and in README.md. */
const VERBS: Record<string, () => Promise<Verb>> = {};

export function registerVerb(name: string, load: () => Promise<Verb>): void {
  VERBS[name] = load;
}

const SUMMARIES: Record<string, string> = {};

export function usage(): string {
  const lines = ['usage: postcopy <verb> [options]', '', 'verbs:'];
  for (const name of Object.keys(VERBS).sort()) {
    lines.push(`  ${name.padEnd(10)} ${SUMMARIES[name] ?? ''}`);
  }
  lines.push('', 'Run `postcopy <verb> --help` for the options of a verb.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  await import('./verbs.js');
  const [verb, ...rest] = argv;
  if (verb === undefined || verb === '--help' || verb === '-h' || verb === 'help') {
    for (const [name, load] of Object.entries(VERBS)) SUMMARIES[name] = (await load()).summary;
    console.log(usage());
    return verb === undefined ? 1 : 0;
  }
  const load = VERBS[verb];
  if (!load) {
    console.error(`postcopy: unknown verb '${verb}'\n`);
    for (const [name, l] of Object.entries(VERBS)) SUMMARIES[name] = (await l()).summary;
    console.error(usage());
    return 2;
  }
  return (await load()).run(rest);
}
