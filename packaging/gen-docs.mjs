// Generates storagectl(8) and storage-agent(8) and storagectl's bash completion from the
// commands' own --help, so that neither can drift from the code.
//   node packaging/gen-docs.mjs LIBDIR MANDIR COMPLETION_FILE VERSION
// LIBDIR holds bin/ and dist/ (the staged package). Walks `storagectl help` recursively.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [lib, mandir, completionFile, version] = process.argv.slice(2);
if (!lib || !mandir || !completionFile || !version) {
  process.stderr.write('usage: gen-docs.mjs LIBDIR MANDIR COMPLETION_FILE VERSION\n');
  process.exit(2);
}

function help(bin, args) {
  const r = spawnSync(process.execPath, [join(lib, 'bin', bin), ...args, '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '100' } });
  if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')} --help: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** the entries of a help text's section ("Commands:" / "Options:"): first words */
function section(text, title) {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trim() === title);
  if (start < 0) return [];
  const out = [];
  for (const l of lines.slice(start + 1)) {
    if (!l.trim()) break;
    const m = /^ {2}(\S.*?)(?: {2,}|$)/.exec(l);
    if (m) out.push(m[1]);
  }
  return out;
}

/** every command path of storagectl with its help text and its options */
function walk(path) {
  const text = help('storagectl', path);
  const node = { path, text, options: [], children: [] };
  for (const o of section(text, 'Options:')) for (const f of o.split(/[ ,]+/)) if (f.startsWith('-')) node.options.push(f);
  for (const c of section(text, 'Commands:')) {
    const name = c.split(/\s/)[0];
    if (name === 'help') continue;
    node.children.push(walk([...path, name]));
  }
  return node;
}

const esc = (s) => s.replace(/\\/g, '\\e').replace(/^([.'])/gm, '\\&$1').replace(/-/g, '\\-');
// reproducible: the date of the commit built (SOURCE_DATE_EPOCH, set by build-deb.sh), else today
const epoch = Number(process.env.SOURCE_DATE_EPOCH);
const date = new Date(Number.isFinite(epoch) && epoch > 0 ? epoch * 1000 : Date.now()).toISOString().slice(0, 10);

function manPage(name, summary, body) {
  return `.TH ${name.toUpperCase()} 8 "${date}" "storage-agent ${version}" "System Administration"\n.SH NAME\n${name} \\- ${esc(summary)}\n${body}`;
}
const verbatim = (t) => `.nf\n${esc(t.trimEnd())}\n.fi\n`;

// storagectl(8)
const tree = walk([]);
const flat = [];
(function collect(n) {
  for (const c of n.children) {
    flat.push(c);
    collect(c);
  }
})(tree);
let body = `.SH SYNOPSIS\n.B storagectl\n[\\fIoptions\\fR] \\fIcommand\\fR [\\fIargs\\fR]\n.SH DESCRIPTION\n${verbatim(tree.text)}.SH COMMANDS\n`;
for (const c of flat) body += `.SS "storagectl ${c.path.join(' ')}"\n${verbatim(c.text)}`;
body += `.SH FILES\n.TP\n/etc/storage-agent/config.yaml\nthe configuration (shared with storage\\-agent(8))\n.SH SEE ALSO\nstorage\\-agent(8), /usr/share/doc/storage\\-agent/README.md\n`;
writeFileSync(join(mandir, 'storagectl.8'), manPage('storagectl', 'admin CLI of the ZFS fleet storage (snapshots, replication, failover, moves)', body));

// storage-agent(8)
const agentHelp = help('storage-agent', []);
writeFileSync(
  join(mandir, 'storage-agent.8'),
  manPage(
    'storage-agent',
    'per-node daemon: snapshots, incremental SSH replication, retention, heartbeat, metrics',
    `.SH SYNOPSIS\n.B storage-agent\n[\\fIoptions\\fR]\n.SH OPTIONS\n${verbatim(agentHelp)}.SH SIGNALS\n.TP\nSIGHUP\nreload the configuration; a bad file is refused (logged) and the old one kept (systemctl reload storage\\-agent)\n.TP\nSIGTERM\nstop taking work; running transfers get the shutdown grace, then are aborted cleanly\n.SH FILES\n.TP\n/etc/storage-agent/config.yaml\nthe configuration; the unit starts once it exists\n.TP\n/var/lib/storage-agent\nstate (capability cache, state cache, the SQLite catalog by default)\n.SH SEE ALSO\nstoragectl(8), systemctl(1), journalctl(1)\n`,
  ),
);

// bash completion: commands by position, then each command's options
const cases = [];
(function emit(n) {
  const words = [...n.children.map((c) => c.path.at(-1)), ...n.options].join(' ');
  cases.push(`    "${n.path.join(' ')}") words="${words}" ;;`);
  for (const c of n.children) emit(c);
})(tree);
const completion = `# bash completion for storagectl (generated from its --help by packaging/gen-docs.mjs)
_storagectl() {
  local cur=\${COMP_WORDS[COMP_CWORD]} path="" w i words
  # the command path typed so far: the words that name (sub)commands
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    case "$w" in -*) continue ;; esac
    case " $(_storagectl_words "$path") " in *" $w "*) path="\${path:+$path }$w" ;; esac
  done
  words=$(_storagectl_words "$path")
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
_storagectl_words() {
  local words=""
  case "$1" in
${cases.join('\n')}
  esac
  printf '%s' "$words"
}
complete -F _storagectl storagectl
`;
writeFileSync(completionFile, completion);
process.stderr.write(`gen-docs: storagectl(8) with ${flat.length} commands, storage-agent(8), completion\n`);
