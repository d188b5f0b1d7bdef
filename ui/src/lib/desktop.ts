// The desktop shell's native side (Tauri commands and plugins), when the UI runs inside it: file
// dialogs, opening a page in the system's browser, and notifications. In a browser these are
// absent: the UI offers a path field and file upload, opens pages in a new tab, and shows a
// notification only where the user already allowed this site to (it never asks).
type Invoke = (cmd: string, args?: Record<string, unknown>) => Promise<unknown>;
declare global {
  interface Window {
    __TAURI__?: { core?: { invoke: Invoke } };
    /** The notifications this page sent (title, body, and the error if it failed): read by the E2E tests. */
    __STUDIO_NOTIFICATIONS__?: { title: string; body: string; error?: string }[];
  }
}

export const isDesktop = (): boolean => !!window.__TAURI__?.core?.invoke;
const invoke = (cmd: string, args?: Record<string, unknown>) => window.__TAURI__!.core!.invoke(cmd, args);
/** A folder chosen in the native dialog, or null when cancelled. */
export const pickFolder = () => invoke('pick_folder') as Promise<string | null>;
/** A JSONL/JSON file chosen in the native dialog, or null when cancelled. */
export const pickDataset = () => invoke('pick_dataset') as Promise<string | null>;
/** Opens a page of the studio's API (`/api/v1/...`, e.g. a report) in the system's browser. */
export const openInBrowser = (apiPath: string) => invoke('open_in_browser', { path: apiPath }) as Promise<void>;

/** Whether `notify` will show anything here. */
export const canNotify = (): boolean =>
  isDesktop() || (typeof Notification !== 'undefined' && Notification.permission === 'granted');

/** A desktop notification: the notification plugin in the app, the Web Notification API in a
 *  browser that already allows it, else nothing. Never throws. */
export async function notify(title: string, body: string): Promise<void> {
  const record = { title, body } as { title: string; body: string; error?: string };
  (window.__STUDIO_NOTIFICATIONS__ ??= []).push(record);
  try {
    if (isDesktop()) await invoke('plugin:notification|notify', { options: { title, body } });
    else if (typeof Notification !== 'undefined' && Notification.permission === 'granted') new Notification(title, { body });
  } catch (e) {
    record.error = e instanceof Error ? e.message : String(e);
  }
}
