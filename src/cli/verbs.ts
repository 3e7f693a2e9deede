/** The registry of CLI verbs; each module is imported only when its verb runs. */
import { registerVerb } from './main.js';

registerVerb('inspect', async () => (await import('./inspect.js')).verb);
