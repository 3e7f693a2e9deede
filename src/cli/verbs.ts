/** The registry of CLI verbs; each module is imported only when its verb runs. */
import { registerVerb } from './main.js';

registerVerb('inspect', async () => (await import('./inspect.js')).verb);
registerVerb('vm', async () => (await import('./vm.js')).verb);
registerVerb('demo', async () => (await import('./demo.js')).verb);
registerVerb('proxy', async () => (await import('./proxy.js')).verb);
