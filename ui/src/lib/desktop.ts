// The desktop shell's native dialogs (Tauri commands), when the UI runs inside it. In a browser
// these are absent and the UI offers a path field and file upload instead.
type Invoke = (cmd: string, args?: Record<string, unknown>) => Promise<unknown>;
declare global { interface Window { __TAURI__?: { core?: { invoke: Invoke } } } }

export const isDesktop = (): boolean => !!window.__TAURI__?.core?.invoke;
const invoke = (cmd: string) => window.__TAURI__!.core!.invoke(cmd) as Promise<string | null>;
/** A folder chosen in the native dialog, or null when cancelled. */
export const pickFolder = () => invoke('pick_folder');
/** A JSONL/JSON file chosen in the native dialog, or null when cancelled. */
export const pickDataset = () => invoke('pick_dataset');
